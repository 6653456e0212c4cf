"""The ImageNet side: crash-safe 50K-image sampling (:mod:`.sample`, its shards :mod:`.shards`
and streamed ``.npz`` files :mod:`.npz`), latent decoding (:mod:`.decode`) and the ADM metrics
(:mod:`.metrics`, :mod:`.evaluate`)."""
