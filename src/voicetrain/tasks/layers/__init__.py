"""Building blocks shared by recipes, one file per role: `alignment` (monotonic alignment search),
`spectral` (STFT magnitude, ONNX-exportable inverse STFT, overlap-add), `synthesis` (DDSP/NSF
signal processing driven by F0), `generators` (ConvNeXt backbone, iSTFT head, Vocos and
source-filter generators), `pitch` (F0 from a log-mel), `discriminators` (multi-period,
multi-resolution) and `losses` (MR-STFT, mel L1, least-squares GAN, feature matching, pitch)."""
