//! Built-in source: kernel.org versions and kernel tarballs (http, https, file)
