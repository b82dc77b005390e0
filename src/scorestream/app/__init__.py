"""The live service: the Faust worker around the engine (see ``worker``)."""
