"""The ``cxrstudy`` command line: study submission and the local all-in-one mode."""
