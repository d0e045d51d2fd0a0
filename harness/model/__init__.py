"""The base model and the adapter on it: loading and converting the base, precision and autocast, putting
an adapter on the one loaded base and taking it off, saving and loading trained adapters.

May import: `store`, `methods/`, `base/`."""
