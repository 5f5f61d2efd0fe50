"""The contracts the exporter writes and the runtime reads: the bundle (contract: names and choice lists;
manifest: the typed manifest.json; integrity: digests and the seal; fields: checked JSON access; signing:
Ed25519 signatures) and the reference folder of `mpee-export reference` (reference). Imports only errors,
files, and the two leaf modules core.policy and core.flops."""
