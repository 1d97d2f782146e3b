//! Built-in reserver that reserves nothing: make -j from the allowed CPUs
