#!/usr/bin/env bash
# Install the agent with the fleet's Ansible role (../ansible/roles/edge_agent), run against the
# rootfs through the chroot connection with services unmanaged, then take out the placeholder
# identity the role had to render.
# shellcheck source=firmware/lib.sh
. "$FIRMWARE_DIR/lib.sh"

version=$(agent_version)
wheel="$WORK/dist/cctv_edge_agent-$version-py3-none-any.whl"
[ -f "$wheel" ] || die "missing $wheel (step 10)"
wheelhouse=/var/tmp/edge-agent-wheelhouse
rm -rf "$ROOTFS$wheelhouse"
cp -r "$WORK/wheelhouse" "$ROOTFS$wheelhouse"

chroot_mount
trap 'rm -rf "$ROOTFS$wheelhouse"; chroot_unmount' EXIT

cat > "$WORK/inventory.yml" <<INVENTORY
all:
  hosts:
    image:
      ansible_connection: community.general.chroot
      ansible_host: $ROOTFS
      ansible_python_interpreter: /usr/bin/python3
      edge_agent_version: "$version"
      edge_agent_wheel_src: $wheel
      edge_agent_district: unseeded
      edge_agent_gateway_id: unseeded
      edge_agent_manage_services: false
      edge_agent_tls_enabled: false
      edge_agent_apt_cache_valid_time: 86400
      edge_agent_pip_extra_args: [--no-index, --find-links, $wheelhouse]
      edge_agent_pip_environment: {PIP_CONFIG_FILE: /dev/null}
INVENTORY

ANSIBLE_ROLES_PATH="$REPO_DIR/ansible/roles" \
ANSIBLE_FILTER_PLUGINS="$REPO_DIR/ansible/filter_plugins" \
ANSIBLE_RETRY_FILES_ENABLED=false ANSIBLE_NOCOLOR=1 ANSIBLE_STDOUT_CALLBACK=default \
ANSIBLE_LOCAL_TEMP="$WORK/ansible-tmp" ANSIBLE_HOME="$WORK/ansible-home" \
  "$REPO_DIR/.venv/bin/ansible-playbook" -i "$WORK/inventory.yml" "$FIRMWARE_DIR/image.yml" \
  >"$WORK/ansible.log" 2>&1 || { tail -n 40 "$WORK/ansible.log" >&2; die "the edge_agent role failed on the rootfs"; }
grep -E '^image +:' "$WORK/ansible.log" >&2 || true

# No identity or credentials in the image: the seed supplies them on each device.
rm -f "$ROOTFS/etc/edge-agent/config.toml" "$ROOTFS/etc/edge-agent/mqtt-password" "$ROOTFS/etc/edge-agent/audit-key" \
  "$ROOTFS/opt/edge-agent/releases/$version/config.toml"
rm -rf "$ROOTFS/etc/edge-agent/tls"
in_chroot test -x /opt/edge-agent/current/bin/edge-agent || die "the role left no /opt/edge-agent/current/bin/edge-agent"
[ -f "$ROOTFS/etc/systemd/system/edge-agent.service" ] || die "the role installed no edge-agent.service"
in_chroot /opt/edge-agent/current/bin/edge-agent --version >&2
