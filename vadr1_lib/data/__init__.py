"""Stage 1, data: the release's schema and labels, video files, footage, and building
Vad-Reasoning-Mini (drawn anomalies, rendered clips, P2C-CoT annotations)."""
