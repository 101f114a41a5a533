// Analytics consent. Loaded only when analytics are configured for this page (the
// server renders #analytics-config). Until the visitor accepts in the banner, nothing
// is loaded from or sent to the analytics host and no analytics cookie or
// localStorage entry exists; after a refusal, or with Global Privacy Control or Do
// Not Track set, it stays that way. The choice is remembered in an essential cookie
// and can be changed at any time from the "Cookie settings" link.
(() => {
  const configElement = document.getElementById("analytics-config");
  if (!configElement) return;
  const config = JSON.parse(configElement.textContent);
  const COOKIE = "clinik_analytics_consent";
  const banner = document.getElementById("consent-banner");
  const browserSaysNo =
    navigator.globalPrivacyControl === true ||
    navigator.doNotTrack === "1" ||
    window.doNotTrack === "1";

  const choice = () => {
    const entry = document.cookie.split("; ").find((c) => c.startsWith(COOKIE + "="));
    return entry ? entry.slice(COOKIE.length + 1) : "";
  };
  const remember = (value) => {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${COOKIE}=${value}; Path=/; Max-Age=15552000; SameSite=Lax${secure}`;
  };
  const forget = () => {
    for (const cookie of document.cookie.split("; ")) {
      const name = cookie.split("=")[0];
      if (name.startsWith("ph_")) document.cookie = `${name}=; Path=/; Max-Age=0`;
    }
    try {
      for (const key of Object.keys(localStorage)) {
        if (key.startsWith("ph_") || key.includes("posthog")) localStorage.removeItem(key);
      }
      for (const key of Object.keys(sessionStorage)) {
        if (key.startsWith("ph_") || key.includes("posthog")) sessionStorage.removeItem(key);
      }
    } catch {
      // storage disabled: nothing was stored either
    }
  };
  // URLs carry organization and key ids and filter values: send the shape only.
  const scrub = (url) => {
    if (typeof url !== "string") return url;
    try {
      const parsed = new URL(url, location.origin);
      const path = parsed.pathname
        .replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi, "{id}")
        .replace(/\/\d+(?=\/|$)/g, "/{n}")
        .replace(/\/invitations\/[^/]+/, "/invitations/{token}")
        .replace(/\/reset\/[^/]+\/[^/]+/, "/reset/{token}");
      return parsed.origin === location.origin ? location.origin + path : parsed.origin;
    } catch {
      return "";
    }
  };
  const beforeSend = (event) => {
    if (!event || !event.properties) return event;
    const props = event.properties;
    for (const key of ["$current_url", "$referrer", "$initial_referrer", "$pathname"]) {
      if (key in props) props[key] = key === "$pathname" ? new URL(scrub(props[key]) || "/", location.origin).pathname : scrub(props[key]);
    }
    delete props.$ip;
    return event;
  };

  let loading = false;
  const load = () => {
    if (loading || window.posthog) return;
    loading = true;
    const script = document.createElement("script");
    script.src = config.script;
    script.onload = () => {
      window.posthog.init(config.key, {
        api_host: config.host,
        ip: false,
        autocapture: true,
        mask_all_text: true,
        mask_all_element_attributes: true,
        // The library arrives after the page loaded: the first pageview is sent below.
        capture_pageview: false,
        capture_pageleave: false,
        disable_session_recording: true,
        disable_surveys: true,
        disable_web_experiments: true,
        disable_external_dependency_loading: true,
        advanced_disable_flags: true,
        advanced_disable_decide: true,
        advanced_disable_feature_flags: true,
        enable_heatmaps: false,
        capture_dead_clicks: false,
        capture_performance: false,
        capture_exceptions: false,
        disable_compression: true,
        respect_dnt: true,
        save_referrer: false,
        person_profiles: "identified_only",
        before_send: beforeSend,
        loaded: (posthog) => {
          if (config.distinct_id) posthog.identify(config.distinct_id);
          posthog.capture("$pageview");
        },
      });
    };
    document.head.appendChild(script);
  };

  const show = () => {
    if (banner) banner.hidden = false;
  };
  const hide = () => {
    if (banner) banner.hidden = true;
  };

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-consent], [data-consent-open]");
    if (!button) return;
    if (button.hasAttribute("data-consent-open")) {
      show();
      return;
    }
    hide();
    if (button.dataset.consent === "accept" && !browserSaysNo) {
      remember("granted");
      load();
    } else {
      remember("denied");
      if (window.posthog && window.posthog.opt_out_capturing) {
        window.posthog.opt_out_capturing();
        window.posthog.reset();
      }
      forget();
    }
  });

  for (const link of document.querySelectorAll("[data-consent-open]")) link.hidden = false;
  if (browserSaysNo) {
    forget();
    if (banner) {
      const accept = banner.querySelector('[data-consent="accept"]');
      if (accept) accept.hidden = true;
      const note = banner.querySelector("[data-consent-signal]");
      if (note) note.hidden = false;
    }
    return;
  }
  if (choice() === "granted") load();
  else if (choice() === "denied") forget();
  else show();
})();
