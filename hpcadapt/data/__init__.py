"""Getting datasets into the local layout the stages read (`python -m hpcadapt.data fetch`)."""
