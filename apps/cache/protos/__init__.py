"""The cache app's protobuf definitions and the code generated from them."""
