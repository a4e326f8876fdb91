#!/usr/bin/env bash
# Debian's packages the tests drive: chromium (the real-browser test), Orthanc and its DICOMweb plugin (a real
# PACS), Prometheus (the monitoring round trip), dcmtk (a real DICOM client and JPEG / JPEG-LS / RLE encoders),
# GDCM's tools (JPEG 2000 encoding) and dicom3tools (dciodvfy, the DICOM validator). A new user runs the same
# one line: sudo apt-get install chromium orthanc orthanc-dicomweb prometheus dcmtk libgdcm-tools dicom3tools
set -uo pipefail
packages=(chromium orthanc orthanc-dicomweb prometheus dcmtk libgdcm-tools dicom3tools)
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" >/dev/null 2>&1; }
install "${missing[@]}" || { $SUDO apt-get update -q >/dev/null 2>&1 && install "${missing[@]}"; } \
  || for p in "${missing[@]}"; do install "$p" || echo "warning: could not install $p; the tests that need it skip"; done
exit 0
