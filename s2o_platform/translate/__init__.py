"""Archive translation: SAR GeoTIFF scenes -> georeferenced optical COGs, streamed through Ray Data.

sources.py   which scenes: a folder, a glob, a list file or an s3:// prefix
manifest.py  DEST/_s2o_manifest.jsonl: each scene's status, reason, timing, output (resume)
writer.py    the mosaic of one scene -> tiled GeoTIFF by bands -> COG -> DEST, atomically
pipeline.py  `s2o translate`: strips -> tiles -> student actors -> mosaics, on Ray Data
"""
