"""The UNO layer: runs only inside LibreOffice (it imports `uno`). Each module is thin and
hands the real work to the plain-Python modules of `kanbanmesh_office`."""
