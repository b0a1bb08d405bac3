"""Storage-backend tests against real servers on 127.0.0.1 (registry, S3, proxies)."""
