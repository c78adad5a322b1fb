#!/bin/bash
# kod viewer entrypoint: shows a kod app's display on the desktop's X server and plays its sound
# on the desktop's PulseAudio; ends with the viewer's exit code.
#
# Sound is playback-only: the app container serves its sound as a raw PCM stream on its own
# 127.0.0.1 (s16le, 48 kHz, stereo: kod.apps.AUDIO_*); this viewer fetches it through `ssh -L` and
# plays it with `pacat --playback`. The app never reaches the desktop's PulseAudio (no `ssh -R`; the
# app's sshd refuses remote forwards), so it cannot record the desktop's microphone.
#
# Configuration (the contract with cloudify; the names are in kod/apps.py):
#   KOD_TARGET_HOST          where the app is reachable (node IP, service name, localhost, ...)
#   KOD_TARGET_SSH_PORT=2222 sshd's port at that address
#   KOD_TARGET_VNC_PORT=5900 VNC's port (unencrypted mode only: cloudify's port-forward, never a NodePort)
#   KOD_TARGET_VNC_HOST      where that port is (unencrypted mode; default KOD_TARGET_HOST)
#   KOD_ENCRYPT=1            VNC through `ssh -L` to the app's localhost (the default; 0: the clear
#                            mode the user asked for, --insecure)
#   KOD_VNC_PORT=5900        VNC's port inside the app container (the -L target)
#   KOD_AUDIO_PORT=4713      the app container's sound stream port (an -L target on its 127.0.0.1)
#   KOD_AUDIO_LATENCY_MS=60  the playback buffer on the desktop (pacat --latency-msec)
#   KOD_VNC_PASSWORD | KOD_VNC_PASSWORD_FILE   the session's one-time VNC password (required)
#   KOD_SSH_KEY_FILE         the session's private key (needed for encryption and sound)
#   KOD_KNOWN_HOSTS_FILE     pins the app's host key: known_hosts lines, or just the public key
#   KOD_PULSE_SOCKET         path in this container of the desktop's kod PulseAudio socket
#   KOD_QUALITY=0-9  KOD_COMPRESSION=0-9   JPEG quality and zlib level (unset: automatic)
#   KOD_CONNECT_TIMEOUT=30   seconds to wait for the app to accept connections
#   KOD_VIEWER_ARGS          extra vncviewer arguments (split on spaces)
#   DISPLAY, XAUTHORITY      the desktop's display (with /tmp/.X11-unix mounted)
# When a *_FILE variable is not set, the file of the same role in /run/secrets/kod is used if present.
#
# Exit codes: vncviewer's own (0 when the app ends or the user closes the window); 2 bad
# configuration (or no usable X display); 3 the app refused the VNC password; 4 SSH failed (host
# key mismatch, key refused, forward refused); 5 the app could not be reached in time.
set -uo pipefail

readonly RUN_DIR=/run/kod SECRET_DIR=/run/secrets/kod HOST_ALIAS=kod-app
readonly EXIT_USAGE=2 EXIT_AUTH=3 EXIT_SSH=4 EXIT_UNREACHABLE=5
# The app's sound stream format (kod.apps.AUDIO_FORMAT, AUDIO_RATE, AUDIO_CHANNELS).
readonly AUDIO_FORMAT=s16le AUDIO_RATE=48000 AUDIO_CHANNELS=2

log() { printf 'kod-viewer: %s\n' "$*" >&2; }
fail() { local code=$1; shift; log "error: $*"; exit "$code"; }

# secret_file VAR NAME: the file VAR names (it must exist), else $SECRET_DIR/NAME if present.
secret_file() {
    local var=$1 name=$2 value=${!1:-}
    if [[ -n $value ]]; then
        [[ -r $value ]] || fail $EXIT_USAGE "$var=$value is not a readable file (is the session Secret mounted?)"
        printf '%s' "$value"
    elif [[ -r $SECRET_DIR/$name ]]; then
        printf '%s' "$SECRET_DIR/$name"
    fi
}

# number VAR DEFAULT MIN MAX: the variable's value, checked.
number() {
    local var=$1 value=${!1:-$2}
    [[ $value =~ ^[0-9]+$ ]] && (( value >= $3 && value <= $4 )) \
        || fail $EXIT_USAGE "$var=$value must be a whole number from $3 to $4"
    printf '%s' "$value"
}

# reachable HOST PORT: a TCP connection succeeds.
reachable() { timeout 2 bash -c ": >/dev/tcp/$1/$2" 2>/dev/null; }

# wait_reachable HOST PORT WHAT: waits up to $wait_s seconds for the port to accept connections.
wait_reachable() {
    local deadline=$(( SECONDS + wait_s ))
    until reachable "$1" "$2"; do
        (( SECONDS < deadline )) || fail $EXIT_UNREACHABLE "$3 at $1:$2 did not accept a connection within ${wait_s} s (KOD_CONNECT_TIMEOUT); is the app running and the address right?"
        sleep 0.2
    done
}

umask 077
host=${KOD_TARGET_HOST:-}
[[ -n $host ]] || fail $EXIT_USAGE "KOD_TARGET_HOST is not set: give the app's address (node IP, service name or localhost)"
encrypt=${KOD_ENCRYPT:-1}
[[ $encrypt == 0 || $encrypt == 1 ]] || fail $EXIT_USAGE "KOD_ENCRYPT=$encrypt must be 0 or 1"
ssh_port=$(number KOD_TARGET_SSH_PORT 2222 1 65535) || exit
target_vnc_port=$(number KOD_TARGET_VNC_PORT 5900 1 65535) || exit
vnc_host=${KOD_TARGET_VNC_HOST:-$host}
vnc_port=$(number KOD_VNC_PORT 5900 1 65535) || exit
audio_port=$(number KOD_AUDIO_PORT 4713 1 65535) || exit
audio_latency=$(number KOD_AUDIO_LATENCY_MS 60 10 5000) || exit
wait_s=$(number KOD_CONNECT_TIMEOUT 30 1 86400) || exit
quality= compression=
[[ -n ${KOD_QUALITY:-} ]] && { quality=$(number KOD_QUALITY 0 0 9) || exit; }
[[ -n ${KOD_COMPRESSION:-} ]] && { compression=$(number KOD_COMPRESSION 0 0 9) || exit; }
pulse=${KOD_PULSE_SOCKET:-}

# The desktop's display: /tmp/.X11-unix must be mounted for a local display such as ":0".
display=${DISPLAY:-}
[[ -n $display ]] || fail $EXIT_USAGE "DISPLAY is not set: give the desktop's display (e.g. :0) and mount /tmp/.X11-unix"
if [[ $display =~ ^:([0-9]+)(\.[0-9]+)?$ && ! -S /tmp/.X11-unix/X${BASH_REMATCH[1]} ]]; then
    fail $EXIT_USAGE "no X socket /tmp/.X11-unix/X${BASH_REMATCH[1]} for DISPLAY=$display: mount the desktop's /tmp/.X11-unix"
fi
if [[ -n ${XAUTHORITY:-} && ! -r $XAUTHORITY ]]; then
    fail $EXIT_USAGE "XAUTHORITY=$XAUTHORITY is not readable by uid $(id -u) (groups $(id -G)): mount it readable for the viewer"
fi

# What this container may do on the desktop, said once at start (docs/security.md has the details).
log "note: drawing on the desktop's X display $display: X gives every client on a display the means to read the others' input and windows; this viewer is the only client of the session that touches it"
[[ $encrypt == 1 ]] || log "WARNING: VNC is not carried inside SSH in this session (cloudify --insecure): only the one-time VNC password protects it, and this viewer cannot check that it talks to the session's app; leave out --insecure to encrypt it"

# The VNC password, obfuscated as vncviewer reads it, in a file only this user can read.
password=${KOD_VNC_PASSWORD:-}
if [[ -z $password ]]; then
    pw_file=$(secret_file KOD_VNC_PASSWORD_FILE vnc-password) || exit
    [[ -n $pw_file ]] && password=$(<"$pw_file")
fi
[[ -n $password ]] || fail $EXIT_USAGE "no VNC password: set KOD_VNC_PASSWORD or KOD_VNC_PASSWORD_FILE (the session's one-time password)"
printf '%s\n' "$password" | vncpasswd -f >"$RUN_DIR/vncpasswd" || fail $EXIT_USAGE "vncpasswd could not encode the password"
unset password KOD_VNC_PASSWORD

# Sound needs the desktop's kod PulseAudio socket, and a server that answers on it.
if [[ -n $pulse ]]; then
    if [[ ! -S $pulse ]]; then
        log "warning: no sound: KOD_PULSE_SOCKET=$pulse is not a socket here (is the desktop's kod PulseAudio directory mounted?)"
        pulse=
    elif ! err=$(PULSE_SERVER="unix:$pulse" timeout 5 pactl info 2>&1 >/dev/null); then
        log "warning: no sound: the desktop's PulseAudio does not answer on $pulse: $err"
        pulse=
    else
        log "note: the app's sound is played on the desktop's kod PulseAudio socket by this viewer (playback only: the app cannot reach the socket)"
    fi
else
    log "no KOD_PULSE_SOCKET: the app's sound stays in the app container"
fi

# SSH carries VNC when encrypted, and the app's sound stream (ssh -L) in every mode.
if [[ $encrypt == 1 || -n $pulse ]]; then
    key=$(secret_file KOD_SSH_KEY_FILE id_ed25519) || exit
    [[ -n $key ]] || fail $EXIT_USAGE "no session key: set KOD_SSH_KEY_FILE (needed for encryption and sound)"
    known=$(secret_file KOD_KNOWN_HOSTS_FILE known_hosts) || exit
    [[ -n $known ]] || fail $EXIT_USAGE "no KOD_KNOWN_HOSTS_FILE: refusing to connect without the app's pinned host key"
    # ssh refuses a private key that others can read: the Secret's mounted copy is root's or
    # group-readable, so take a private copy owned by this user.
    cp "$key" "$RUN_DIR/id" && chmod 600 "$RUN_DIR/id" || fail $EXIT_USAGE "cannot copy the session key $key"
    # Bare public keys are pinned under the alias this entrypoint connects with.
    while IFS= read -r line; do
        [[ -z $line || $line == \#* ]] && continue
        if [[ $line =~ ^(ssh-|ecdsa-|sk-) ]]; then line="$HOST_ALIAS $line"; fi
        printf '%s\n' "$line"
    done <"$known" >"$RUN_DIR/known_hosts"
    [[ -s $RUN_DIR/known_hosts ]] || fail $EXIT_USAGE "$known holds no host key"

    wait_reachable "$host" "$ssh_port" "the app's sshd"
    ssh_args=(
        -F /dev/null -N -f -p "$ssh_port" -l kod -i "$RUN_DIR/id"
        -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes
        -o StrictHostKeyChecking=yes -o HostKeyAlias="$HOST_ALIAS" -o UpdateHostKeys=no
        -o UserKnownHostsFile="$RUN_DIR/known_hosts" -o GlobalKnownHostsFile=/dev/null
        -o ExitOnForwardFailure=yes -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=3
        -o LogLevel=ERROR
    )
    forwards=()
    [[ $encrypt == 1 ]] && forwards+=(-L "127.0.0.1:$vnc_port:localhost:$vnc_port")
    # The sound stream, on this container's own loopback: only this container reaches it.
    [[ -n $pulse ]] && forwards+=(-L "127.0.0.1:$audio_port:localhost:$audio_port")
    # -f with ExitOnForwardFailure returns once every forward is set up, or fails. A port that
    # accepts before sshd answers (a port-forward through the API server, a NodePort) closes the
    # first connections: try again until the sshd greets or the time is up.
    deadline=$(( SECONDS + wait_s ))
    until ssh "${ssh_args[@]}" "${forwards[@]}" "$host" 2>"$RUN_DIR/ssh.log"; do
        err=$(tr '\n' ' ' <"$RUN_DIR/ssh.log")
        if [[ $err =~ kex_exchange_identification|Connection\ closed\ by|Connection\ reset|Connection\ refused ]] \
                && (( SECONDS < deadline )); then
            sleep 0.5
            continue
        fi
        case $err in
            *"Host key verification failed"*|*"REMOTE HOST IDENTIFICATION HAS CHANGED"*|*"No ED25519 host key is known"*|*"host key"*)
                fail $EXIT_SSH "the app's SSH host key does not match the session's pinned key ($known): refusing to connect ($err)" ;;
            *"Permission denied"*)
                fail $EXIT_SSH "the app refused the session key $key ($err)" ;;
            *"forwarding failed"*|*"forward"*)
                fail $EXIT_SSH "the app refused a port forward ($err)" ;;
            *)
                fail $EXIT_UNREACHABLE "ssh to $host:$ssh_port failed: $err" ;;
        esac
    done
    log "ssh tunnels up: ${forwards[*]}"
fi

# play_sound: the app's stream into the desktop's PulseAudio for the whole session. A stream ends
# when the connection breaks (the app's side restarted, or serves no sound): reconnect after a
# pause, longer each time a stream ends at once (up to 8 s), so that an app without sound does not
# make the desktop's PulseAudio open a stream twice a second. pacat's and bash's complaints go to
# $RUN_DIR/sound.log, not to the session's log.
play_sound() {
    local pause=1 started
    while :; do
        started=$SECONDS
        pacat --playback --raw --format="$AUDIO_FORMAT" --rate="$AUDIO_RATE" --channels="$AUDIO_CHANNELS" \
            --latency-msec="$audio_latency" --client-name=kod-viewer --stream-name="${KOD_APP:-kod app}" \
            --server="unix:$pulse" <"/dev/tcp/127.0.0.1/$audio_port"
        if (( SECONDS - started > 2 )); then pause=1; elif (( pause < 8 )); then pause=$(( pause * 2 )); fi
        sleep "$pause"
    done
}
if [[ -n $pulse ]]; then
    play_sound 2>>"$RUN_DIR/sound.log" &
    log "sound: playing the app's stream on the desktop (pacat, latency ${audio_latency} ms)"
fi
if [[ $encrypt == 1 ]]; then
    server="127.0.0.1::$vnc_port"
else
    wait_reachable "$vnc_host" "$target_vnc_port" "the app's VNC server"
    server="$vnc_host::$target_vnc_port"
fi

# Errors end the viewer with a message in the log, never with a dialog waiting for a click.
# Only the authentication the app's server uses (VncAuth): a server that offers none ("None") or
# another is refused, so an impostor on the path cannot show a screen of its own without the password.
args=(-passwd "$RUN_DIR/vncpasswd" -SecurityTypes VncAuth -AlertOnFatalError=0 -ReconnectOnError=0)
# vncviewer 1.12 ignores -QualityLevel unless auto-selection is off, and -CompressLevel unless
# -CustomCompressLevel is on (measured: identical bytes at levels 0 and 9 without it).
[[ -n $quality || -n $compression ]] && args+=(-AutoSelect=0)
[[ -n $quality ]] && args+=(-QualityLevel="$quality")
[[ -n $compression ]] && args+=(-CustomCompressLevel=1 -CompressLevel="$compression")
read -r -a extra <<<"${KOD_VIEWER_ARGS:-}"
log "vncviewer ${args[*]:2} ${extra[*]:-} $server"

# vncviewer's messages go to a file (to recognise a refused password) and to the container log.
vlog=$RUN_DIR/vncviewer.log
vncviewer "${args[@]}" "${extra[@]}" "$server" 2>"$vlog" &
vpid=$!
tail -s 0.1 -n +1 -f --pid="$vpid" "$vlog" >&2 &
tpid=$!
trap 'kill -TERM "$vpid" 2>/dev/null' TERM INT HUP
while :; do
    wait "$vpid"
    code=$?
    kill -0 "$vpid" 2>/dev/null || break
done
wait "$tpid" 2>/dev/null
# TigerVNC 1.12's vncviewer exits 0 after most errors (it only logs them), so its log decides.
if grep -q -i -E 'no matching security types|security type.*not supported|Server requested security type' "$vlog"; then
    fail $EXIT_AUTH "the VNC server at $server does not use the session's authentication (VncAuth): refusing it (an impostor?)"
elif grep -q -E 'Authentication fail' "$vlog"; then
    fail $EXIT_AUTH "the app's VNC server refused the password: wrong or expired session token (KOD_VNC_PASSWORD)"
elif grep -q -i -E "can't open display|unable to open display" "$vlog"; then
    fail $EXIT_USAGE "cannot open the X display $display: check the mounted /tmp/.X11-unix and the X authority file (XAUTHORITY)"
elif grep -q -E 'unable to connect to socket|No route to host|Connection timed out' "$vlog"; then
    fail $EXIT_UNREACHABLE "cannot connect to the app's VNC server at $server"
elif grep -q -E 'connection was dropped by the server before|Connection reset by peer|Broken pipe' "$vlog"; then
    fail 1 "the connection to the app broke: $(grep -E 'dropped|reset|Broken' "$vlog" | tail -1)"
elif (( code != 0 )); then
    log "vncviewer ended with exit code $code"
else
    log "the session ended"
fi
exit "$code"
