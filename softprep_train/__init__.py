"""softprep_train: KL-loss training from softprep stores (torch). Not implemented yet: see the open issue."""
