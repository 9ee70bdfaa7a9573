"""The command line (``recsys``): the layer above flows/ and api/; nothing imports it."""
