#!/bin/sh
# Entry point of the compose examples: runs smegd and forms the mesh by itself.
#
#   CREATE="a b"   create one mesh per name (once; the id is kept in the state
#                  volume) and publish an invitation for each to /invites/NAME.token
#   JOIN="a"       wait for /invites/NAME.token and join that mesh (once)
#   NEW_MESH_ARGS, JOIN_ARGS   extra smegctl flags (e.g. --advertise-routes)
#
# The invitations live on a volume shared by the example's containers only;
# they admit up to INVITE_USES joins within INVITE_TTL.
set -eu
state=/var/lib/smegmesh
smegd /etc/smegmesh/smegd.yaml &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit $?' TERM INT

until smegctl list-meshes >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { wait "$pid"; exit $?; }
  sleep 0.2
done

for name in ${CREATE:-}; do
  if [ ! -s "$state/mesh-$name" ]; then
    # shellcheck disable=SC2086  # NEW_MESH_ARGS holds several flags
    smegctl new-mesh ${NEW_MESH_ARGS:-} > "$state/mesh-$name.tmp"
    mv "$state/mesh-$name.tmp" "$state/mesh-$name"
  fi
  smegctl invite --meshid "$(cat "$state/mesh-$name")" --ttl "${INVITE_TTL:-1h}" \
    --uses "${INVITE_USES:-16}" > "/invites/$name.token.tmp"
  mv "/invites/$name.token.tmp" "/invites/$name.token"
  echo "node.sh: mesh $name is $(cat "$state/mesh-$name"); invitation in /invites/$name.token"
done

for name in ${JOIN:-}; do
  if [ ! -s "$state/mesh-$name" ]; then
    until [ -s "/invites/$name.token" ]; do
      kill -0 "$pid" 2>/dev/null || { wait "$pid"; exit $?; }
      sleep 0.5
    done
    # shellcheck disable=SC2086  # JOIN_ARGS holds several flags
    smegctl join-mesh --token "$(cat "/invites/$name.token")" ${JOIN_ARGS:-} \
      > "$state/mesh-$name.tmp"
    mv "$state/mesh-$name.tmp" "$state/mesh-$name"
  fi
  echo "node.sh: in mesh $name ($(cat "$state/mesh-$name"))"
done

wait "$pid"
