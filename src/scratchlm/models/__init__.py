"""Model families, one file each. See scratchlm.registry for the list."""
