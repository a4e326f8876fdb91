"""ccad in the PACS workflow: a DICOM Storage SCP that scores chest X-rays and sends a structured report
and a heatmap overlay back into the same study (``ccad dicom listen``; docs/pacs.md).

- :mod:`.results`: which images are scored, and the DICOM objects of a result (highdicom);
- :mod:`.spool`: the folder where received images and unsent results wait (written atomically);
- :mod:`.listener`: the pynetdicom SCP, the bounded scoring pool and the C-STORE sender with retry.
"""
