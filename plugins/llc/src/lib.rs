//! Built-in reserver: CPU budgets in whole last-level caches, with per-LLC flocks and a cpuset sandbox
