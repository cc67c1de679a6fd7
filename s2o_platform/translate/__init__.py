"""Archive translation: SAR GeoTIFF scenes -> georeferenced optical COGs, streamed through Ray Data.

sources.py   which scenes: a folder, a glob, a list file or an s3:// prefix
manifest.py  DEST/_s2o_manifest.jsonl: each scene's status, reason, timing, output (resume)
writer.py    the mosaic of one scene -> tiled GeoTIFF by bands -> COG -> DEST, atomically
stac.py      STAC in (an Item, ItemCollection or catalog as SOURCE) and out (DEST/catalog.json)
gallery.py   quicklooks of each output and its SAR, and DEST/index.html
publish.py   the end of a run: quicklooks, catalog and gallery, rebuilt from the manifest
pipeline.py  `s2o translate`: strips -> tiles -> student actors -> mosaics, on Ray Data
"""
