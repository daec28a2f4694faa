"""Deterministic .npz writer shared by tools/make_data.py and the fixture
scripts in tests/fixtures/.

np.savez stamps each zip member with the current time (and forces zip64
extra fields), so two runs never give identical bytes. save_npz writes the
same .npy members (np.lib.format, version 1.0 headers, C order) into a plain
STORED (uncompressed, no zip64) zip with a fixed 1980-01-01 timestamp and
members in the order given. np.load reads it like any npz; a minimal reader
only has to walk local file headers and parse .npy.
"""

import io
import zipfile

import numpy as np


def save_npz(path, arrays):
    """Write {name: array} to path; names get a '.npy' suffix inside the zip."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            a = np.asarray(value)  # keeps 0-d scalars 0-d
            if not a.flags.c_contiguous:
                a = a.copy(order="C")
            if a.dtype == object:
                raise TypeError(f"{name}: object arrays are not allowed")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
