//! Built-in configurer: base config target + profile fragment + user fragments
