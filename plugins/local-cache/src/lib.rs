//! Built-in local cache backend: atomic entries under the cache root
