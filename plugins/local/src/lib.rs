//! Built-in source acquirer for a kernel tree on local disk (gix probe)
