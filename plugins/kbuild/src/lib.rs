//! Built-in builder: kbuild make with reserved parallelism
