"""Test and benchmark harnesses beside the product: namespace hosts on one machine and the
benchmarks that print numbers (alltoallv, model, one host against several). The product
packages never import from here."""
