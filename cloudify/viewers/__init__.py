"""The three ways to show a session on the desktop, behind one small interface (`Viewer`):

- `pod`:    the viewer image as a pod on the user's virtual node (run by the Docker sidecar);
- `docker`: the viewer image as a container in the local Docker engine, started by cloudify;
- `native`: the desktop's own vncviewer (or browser, for noVNC) and ssh.
"""
