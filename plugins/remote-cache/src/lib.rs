//! Built-in remote cache tiers: s3-cache (S3-compatible object stores) and http-cache (HTTP/WebDAV)
