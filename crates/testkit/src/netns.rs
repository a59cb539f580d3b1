//! Network-namespace nodes and pods for NMI tests; owned by the NMI work.
