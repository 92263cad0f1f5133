"""The gRPC API: generated code per version (v1) and the proofs and input checks it applies."""
