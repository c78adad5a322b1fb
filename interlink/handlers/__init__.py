"""interlink's request handlers, one per file; each file opens with its contract (request,
response, status codes). `interlink.routes` registers them."""
