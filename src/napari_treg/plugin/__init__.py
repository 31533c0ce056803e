"""The napari layer of napari-treg: dock widgets, sample data and the demo.

- :mod:`.restore_widget`, :mod:`.simulate_widget`, :mod:`.batch_widget`: the dock widgets (thin Qt shells).
- :mod:`.restore_form`, :mod:`.forms`: the restore widget's form, and the magicgui parameter widgets
  the widgets share.
- :mod:`.worker`, :mod:`.status`: worker threads (one relay to the GUI, napari's progress) and the
  status line.
- :mod:`.choices`, :mod:`.layers`, :mod:`.restoration`, :mod:`.output_layers`, :mod:`.messages`:
  everything the widgets do that needs no Qt (models from widget values, plane selection,
  geometry, provenance, the run, the layers it adds, what the widgets say).
- :mod:`.sample_data`, :mod:`.demo`: bundled examples and ``napari-treg demo``.

Nothing is imported here, so ``import napari_treg.plugin.layers`` does not pull in Qt.
"""
