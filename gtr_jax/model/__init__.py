"""The encoder: a T5 encoder stack (t5), its matmul kernels (matmul), and the dual encoder
that pools, projects and normalizes it into query and document towers (dual_encoder)."""
