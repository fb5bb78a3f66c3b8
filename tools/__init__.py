"""The workshop: what builds and checks the project but is not the product (generators of
dvc.yaml and of the docs' results blocks, the mutation apparatus, the infrastructure checks).
``mofi_core`` never imports it."""
