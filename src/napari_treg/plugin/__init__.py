"""The napari layer of napari-treg: dock widgets, sample data and the demo.

- :mod:`.restore_widget`, :mod:`.simulate_widget`: the dock widgets (thin Qt shells).
- :mod:`.forms`: the magicgui parameter widgets they share.
- :mod:`.choices`, :mod:`.layers`, :mod:`.job`: everything the widgets do that needs no Qt
  (operators and models from widget values, plane selection, geometry, provenance, the run).
- :mod:`.sample_data`, :mod:`.demo`: bundled examples and ``napari-treg demo``.

Nothing is imported here, so ``import napari_treg.plugin.layers`` does not pull in Qt.
"""
