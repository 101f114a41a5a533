def money(cents: int, currency: str) -> str:
    """An amount in the currency's minor unit, for people: `$1,234.50`, `12.00 CHF`."""
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency.lower(), "")
    amount = f"{cents / 100:,.2f}"
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"
