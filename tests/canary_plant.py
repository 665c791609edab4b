"""Plant distinctive identifiers in a raw extract (OMOP tables and DICOM series) and find them
again in the files a pipeline run wrote.

:func:`plant_omop` overwrites every free-text column of every clinical OMOP table (every
``*_source_value``, ``stop_reason``, ``sig``, ``lot_number``, ``value_as_string``,
``measurement_time``, ``wadors_uri``) with a canary naming a fake MRN, a fake name and the
person's birth date; the analysis never reads these columns, so the data stay valid.
:func:`plant_dicom` does the same for the patient/study identifying tags of every DICOM file
(within each tag's value representation). :func:`scan_outputs` lists (file, kind of canary)
for every hit in every file under the given folders, never the text around a hit.
"""

from __future__ import annotations

import base64
import re
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MARK = "CANARY"  # every planted string holds it (upper case: paths may say "canary")
FAKE_NAME = "Zabriskie^Quentella"  # a name no report would print by chance
CLINICAL = ["person", "observation_period", "visit_occurrence", "condition_occurrence",
            "drug_exposure", "procedure_occurrence", "measurement", "observation", "death",
            "image_occurrence"]
# string columns the pipeline reads (file locations and series keys): left as they are
USED = {"local_path", "image_study_uid", "image_series_uid"}
# DICOM tags naming or dating the patient, the study, the staff or the site
DICOM_TAGS = {
    "PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "OtherPatientIDs": "LO",
    "PatientAddress": "LO", "PatientTelephoneNumbers": "SH", "AccessionNumber": "SH",
    "StudyID": "SH", "InstitutionName": "LO", "InstitutionAddress": "ST",
    "ReferringPhysicianName": "PN", "PerformingPhysicianName": "PN", "OperatorsName": "PN",
    "StationName": "SH", "StudyDescription": "LO", "DeviceSerialNumber": "LO",
}


def person_canary(person_id: int) -> str:
    """The MRN planted for a person (also the DICOM PatientID)."""
    return f"MRN-{MARK}-{int(person_id):07d}"


def birth_dates(omop_dir: Path) -> dict[int, str]:
    """{person_id: ISO birth date} from person.parquet (year/month/day of birth)."""
    t = pq.read_table(omop_dir / "person.parquet",
                      columns=["person_id", "year_of_birth", "month_of_birth", "day_of_birth"])
    rows = zip(*(t[c].to_pylist() for c in t.column_names), strict=True)
    return {pid: f"{y:04d}-{m:02d}-{d:02d}" for pid, y, m, d in rows
            if None not in (y, m, d)}


def plant_omop(omop_dir: Path) -> dict[str, list[str]]:
    """Overwrite the free-text columns of every clinical table with canaries, in place.

    A row's canary is ``MRN-CANARY-<person> Zabriskie^Quentella <birth date> <table>.<col>``
    (tables without person_id: the row number). Returns {table: planted columns}.
    """
    born = birth_dates(omop_dir)
    planted = {}
    for table in CLINICAL:
        path = omop_dir / f"{table}.parquet"
        if not path.exists():
            continue
        t = pq.read_table(path)
        cols = [f.name for f in t.schema if pa.types.is_string(f.type) and f.name not in USED]
        if not cols:
            continue
        ids = (t["person_id"].to_pylist() if "person_id" in t.column_names
               else list(range(t.num_rows)))
        for col in cols:
            values = pa.array([f"{person_canary(p)} {FAKE_NAME} {born.get(p, '1901-02-03')} "
                               f"{table}.{col}" for p in ids], type=pa.string())
            t = t.set_column(t.schema.get_field_index(col), col, values)
        pq.write_table(t, path)
        planted[table] = cols
    return planted


def dicom_value(tag: str, vr: str, person: str, birth: str) -> str:
    """A valid value of ``tag`` holding the canary mark (SH: <= 16 chars, DA: YYYYMMDD)."""
    if vr == "DA":
        return birth.replace("-", "")
    if vr == "PN":
        return f"{MARK}{tag[:6]}^{FAKE_NAME.split('^')[1]}{person}"
    if vr == "SH":
        return f"{MARK}{person}"[:16]
    return f"{MARK}-{tag}-{person} {FAKE_NAME}"


def plant_dicom(imaging_dir: Path, omop_dir: Path) -> int:
    """Set every tag of :data:`DICOM_TAGS` in every DICOM file under ``imaging_dir`` (CT
    slices and SEG/RTSTRUCT masks alike), in place, the same values for all files of one
    person; returns the number of files rewritten. A file's person is found through its
    original PatientID, which image_occurrence's series folders give."""
    import pydicom

    born = birth_dates(omop_dir)
    occ = pq.read_table(omop_dir / "image_occurrence.parquet", columns=["person_id", "local_path"])
    person_of = {}  # original PatientID -> person_id
    for pid, local in zip(occ["person_id"].to_pylist(), occ["local_path"].to_pylist(), strict=True):
        first = next(iter(sorted((omop_dir.parent / local).glob("*.dcm"))), None)
        if first is not None:
            person_of[str(pydicom.dcmread(first, stop_before_pixels=True).PatientID)] = pid
    n = 0
    for file in sorted(imaging_dir.rglob("*.dcm")):
        ds = pydicom.dcmread(file)
        pid = person_of[str(ds.PatientID)]
        for tag, vr in DICOM_TAGS.items():
            value = dicom_value(tag, vr, f"{pid:07d}", born.get(pid, "1901-02-03"))
            setattr(ds, tag, person_canary(pid) if tag == "PatientID" else value)
        ds.save_as(file)
        n += 1
    return n


def dicom_identifiers(imaging_dir: Path) -> set[str]:
    """Study, series and SOP instance UIDs of every DICOM file (identifiers of a real scan)."""
    import pydicom

    uids = set()
    for file in imaging_dir.rglob("*.dcm"):
        ds = pydicom.dcmread(file, stop_before_pixels=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID",
                                            "SOPInstanceUID"])
        uids |= {str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                               "SOPInstanceUID")}
    return {u for u in uids if len(u) > 8}


def png_text(data: bytes) -> str:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file, decoded."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"tEXt":
            out.append(body.decode("latin-1"))
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out.append(key.decode("latin-1") + zlib.decompress(rest[1:]).decode("latin-1"))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, text = rest.partition(b"\0")
            out.append(key.decode("latin-1") + " " + (zlib.decompress(text) if compressed
                                                      else text).decode("utf-8", "replace"))
        pos += 12 + length
    return "\n".join(out)


_EMBEDDED_PNG = re.compile(r'(?:data:image/png;base64,|"image/png": ")(iVBOR[A-Za-z0-9+/=\\n]+)')


def file_text(path: Path) -> str:
    """What a reader of ``path`` can see as text: a PNG's text chunks, a parquet file's
    string values and metadata, any other file decoded as UTF-8 (bytes kept as latin-1)."""
    data = path.read_bytes()
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return png_text(data)
    if data[:4] == b"PAR1":
        t = pq.read_table(path)
        parts = [str(t.schema.metadata or {})]
        for col in t.column_names:
            if pa.types.is_string(t[col].type) or pa.types.is_large_string(t[col].type):
                parts.append("\n".join(v for v in pc.unique(t[col]).to_pylist() if v))
        return "\n".join(parts)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    # figures embedded in notebooks and HTML: their PNG text chunks too
    for b64 in _EMBEDDED_PNG.findall(text):
        text += "\n" + png_text(base64.b64decode(b64.replace("\\n", "").replace("\n", "")))
    return text


def scan_outputs(files, identifiers: set[str], dates: set[str]) -> list[tuple[str, str]]:
    """(file, what) for every file holding a planted canary (``what`` = "canary"), a listed
    identifier ("identifier") or a birth date as ISO text or YYYYMMDD ("birth date").

    Never returns the matched text or its surroundings.
    """
    mark = re.compile(MARK + "|" + FAKE_NAME.split("^")[0])
    token = re.compile(r"[A-Za-z0-9][A-Za-z0-9.^_\-]*[A-Za-z0-9]")
    date_pat = re.compile(r"(?<![\d.])(\d{4})-?(\d{2})-?(\d{2})(?![\d])")
    hits = []
    for file in files:
        text = file_text(Path(file))
        if mark.search(text):
            hits.append((str(file), "canary"))
        if identifiers & set(token.findall(text)):
            hits.append((str(file), "identifier"))
        found = {f"{y}-{m}-{d}" for y, m, d in date_pat.findall(text)}
        if found & dates:
            hits.append((str(file), "birth date"))
    return hits
