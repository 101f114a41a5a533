import { useEffect, useId, useRef, useState } from "react";

/** A labelled search box that reports its value after the user pauses typing. */
export function SearchInput({
  label,
  onSearch,
  placeholder,
  delayMs = 300,
  defaultValue = "",
}: {
  label: string;
  onSearch: (value: string) => void;
  placeholder?: string;
  delayMs?: number;
  defaultValue?: string;
}) {
  const id = useId();
  const [value, setValue] = useState(defaultValue);
  const onSearchRef = useRef(onSearch);
  onSearchRef.current = onSearch;
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    const timer = setTimeout(() => onSearchRef.current(value.trim()), delayMs);
    return () => clearTimeout(timer);
  }, [value, delayMs]);
  return (
    <div className="ck-search" role="search">
      <label htmlFor={id}>{label}</label>
      <input
        id={id}
        type="search"
        value={value}
        {...(placeholder ? { placeholder } : {})}
        onChange={(event) => setValue(event.target.value)}
        onKeyDown={(event) => {
          if (event.key === "Enter") onSearchRef.current(value.trim());
        }}
      />
    </div>
  );
}
