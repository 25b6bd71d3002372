"""Training data: offline datasets (DSRL HDF5), the online step replay, the mixer of the two, and
image augmentation. Imports numpy, h5py and torch only; nothing else of the trainer."""
