"""Test beds for running real nodes on one machine (see :mod:`smegmesh.testbed.netns`)."""
