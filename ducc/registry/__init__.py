"""Registry I/O: challenge parsing, keychains, the retry policy, transfer deadlines, the transport (one
request), pulling, pushing, and ``RegistryClient``, which holds one of each for callers that read and write."""
