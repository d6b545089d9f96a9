"""Reports people read: one self-contained HTML file with plots and a transcript browser."""
