"""Registry I/O: challenge parsing, keychains and the HTTP client."""
