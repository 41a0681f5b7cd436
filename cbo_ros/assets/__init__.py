"""Set-up assets: model export and quantisation, media gathering, artifact paths."""
