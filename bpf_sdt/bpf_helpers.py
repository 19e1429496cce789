"""BPF helpers: the id of each by name, and the arguments each takes, by id (generated
by scripts/gen_helpers.py from libbpf's bpf_helper_defs.h; do not edit).  Unknown ids:
assume 5 arguments."""

HELPER_IDS: dict[str, int] = {
    "bpf_map_lookup_elem": 1,
    "bpf_map_update_elem": 2,
    "bpf_map_delete_elem": 3,
    "bpf_probe_read": 4,
    "bpf_ktime_get_ns": 5,
    "bpf_trace_printk": 6,
    "bpf_get_prandom_u32": 7,
    "bpf_get_smp_processor_id": 8,
    "bpf_skb_store_bytes": 9,
    "bpf_l3_csum_replace": 10,
    "bpf_l4_csum_replace": 11,
    "bpf_tail_call": 12,
    "bpf_clone_redirect": 13,
    "bpf_get_current_pid_tgid": 14,
    "bpf_get_current_uid_gid": 15,
    "bpf_get_current_comm": 16,
    "bpf_get_cgroup_classid": 17,
    "bpf_skb_vlan_push": 18,
    "bpf_skb_vlan_pop": 19,
    "bpf_skb_get_tunnel_key": 20,
    "bpf_skb_set_tunnel_key": 21,
    "bpf_perf_event_read": 22,
    "bpf_redirect": 23,
    "bpf_get_route_realm": 24,
    "bpf_perf_event_output": 25,
    "bpf_skb_load_bytes": 26,
    "bpf_get_stackid": 27,
    "bpf_csum_diff": 28,
    "bpf_skb_get_tunnel_opt": 29,
    "bpf_skb_set_tunnel_opt": 30,
    "bpf_skb_change_proto": 31,
    "bpf_skb_change_type": 32,
    "bpf_skb_under_cgroup": 33,
    "bpf_get_hash_recalc": 34,
    "bpf_get_current_task": 35,
    "bpf_probe_write_user": 36,
    "bpf_current_task_under_cgroup": 37,
    "bpf_skb_change_tail": 38,
    "bpf_skb_pull_data": 39,
    "bpf_csum_update": 40,
    "bpf_set_hash_invalid": 41,
    "bpf_get_numa_node_id": 42,
    "bpf_skb_change_head": 43,
    "bpf_xdp_adjust_head": 44,
    "bpf_probe_read_str": 45,
    "bpf_get_socket_cookie": 46,
    "bpf_get_socket_uid": 47,
    "bpf_set_hash": 48,
    "bpf_setsockopt": 49,
    "bpf_skb_adjust_room": 50,
    "bpf_redirect_map": 51,
    "bpf_sk_redirect_map": 52,
    "bpf_sock_map_update": 53,
    "bpf_xdp_adjust_meta": 54,
    "bpf_perf_event_read_value": 55,
    "bpf_perf_prog_read_value": 56,
    "bpf_getsockopt": 57,
    "bpf_override_return": 58,
    "bpf_sock_ops_cb_flags_set": 59,
    "bpf_msg_redirect_map": 60,
    "bpf_msg_apply_bytes": 61,
    "bpf_msg_cork_bytes": 62,
    "bpf_msg_pull_data": 63,
    "bpf_bind": 64,
    "bpf_xdp_adjust_tail": 65,
    "bpf_skb_get_xfrm_state": 66,
    "bpf_get_stack": 67,
    "bpf_skb_load_bytes_relative": 68,
    "bpf_fib_lookup": 69,
    "bpf_sock_hash_update": 70,
    "bpf_msg_redirect_hash": 71,
    "bpf_sk_redirect_hash": 72,
    "bpf_lwt_push_encap": 73,
    "bpf_lwt_seg6_store_bytes": 74,
    "bpf_lwt_seg6_adjust_srh": 75,
    "bpf_lwt_seg6_action": 76,
    "bpf_rc_repeat": 77,
    "bpf_rc_keydown": 78,
    "bpf_skb_cgroup_id": 79,
    "bpf_get_current_cgroup_id": 80,
    "bpf_get_local_storage": 81,
    "bpf_sk_select_reuseport": 82,
    "bpf_skb_ancestor_cgroup_id": 83,
    "bpf_sk_lookup_tcp": 84,
    "bpf_sk_lookup_udp": 85,
    "bpf_sk_release": 86,
    "bpf_map_push_elem": 87,
    "bpf_map_pop_elem": 88,
    "bpf_map_peek_elem": 89,
    "bpf_msg_push_data": 90,
    "bpf_msg_pop_data": 91,
    "bpf_rc_pointer_rel": 92,
    "bpf_spin_lock": 93,
    "bpf_spin_unlock": 94,
    "bpf_sk_fullsock": 95,
    "bpf_tcp_sock": 96,
    "bpf_skb_ecn_set_ce": 97,
    "bpf_get_listener_sock": 98,
    "bpf_skc_lookup_tcp": 99,
    "bpf_tcp_check_syncookie": 100,
    "bpf_sysctl_get_name": 101,
    "bpf_sysctl_get_current_value": 102,
    "bpf_sysctl_get_new_value": 103,
    "bpf_sysctl_set_new_value": 104,
    "bpf_strtol": 105,
    "bpf_strtoul": 106,
    "bpf_sk_storage_get": 107,
    "bpf_sk_storage_delete": 108,
    "bpf_send_signal": 109,
    "bpf_tcp_gen_syncookie": 110,
    "bpf_skb_output": 111,
    "bpf_probe_read_user": 112,
    "bpf_probe_read_kernel": 113,
    "bpf_probe_read_user_str": 114,
    "bpf_probe_read_kernel_str": 115,
    "bpf_tcp_send_ack": 116,
    "bpf_send_signal_thread": 117,
    "bpf_jiffies64": 118,
    "bpf_read_branch_records": 119,
    "bpf_get_ns_current_pid_tgid": 120,
    "bpf_xdp_output": 121,
    "bpf_get_netns_cookie": 122,
    "bpf_get_current_ancestor_cgroup_id": 123,
    "bpf_sk_assign": 124,
    "bpf_ktime_get_boot_ns": 125,
    "bpf_seq_printf": 126,
    "bpf_seq_write": 127,
    "bpf_sk_cgroup_id": 128,
    "bpf_sk_ancestor_cgroup_id": 129,
    "bpf_ringbuf_output": 130,
    "bpf_ringbuf_reserve": 131,
    "bpf_ringbuf_submit": 132,
    "bpf_ringbuf_discard": 133,
    "bpf_ringbuf_query": 134,
    "bpf_csum_level": 135,
    "bpf_skc_to_tcp6_sock": 136,
    "bpf_skc_to_tcp_sock": 137,
    "bpf_skc_to_tcp_timewait_sock": 138,
    "bpf_skc_to_tcp_request_sock": 139,
    "bpf_skc_to_udp6_sock": 140,
    "bpf_get_task_stack": 141,
    "bpf_load_hdr_opt": 142,
    "bpf_store_hdr_opt": 143,
    "bpf_reserve_hdr_opt": 144,
    "bpf_inode_storage_get": 145,
    "bpf_inode_storage_delete": 146,
    "bpf_d_path": 147,
    "bpf_copy_from_user": 148,
    "bpf_snprintf_btf": 149,
    "bpf_seq_printf_btf": 150,
    "bpf_skb_cgroup_classid": 151,
    "bpf_redirect_neigh": 152,
    "bpf_per_cpu_ptr": 153,
    "bpf_this_cpu_ptr": 154,
    "bpf_redirect_peer": 155,
    "bpf_task_storage_get": 156,
    "bpf_task_storage_delete": 157,
    "bpf_get_current_task_btf": 158,
    "bpf_bprm_opts_set": 159,
    "bpf_ktime_get_coarse_ns": 160,
    "bpf_ima_inode_hash": 161,
    "bpf_sock_from_file": 162,
    "bpf_check_mtu": 163,
    "bpf_for_each_map_elem": 164,
    "bpf_snprintf": 165,
    "bpf_sys_bpf": 166,
    "bpf_btf_find_by_name_kind": 167,
    "bpf_sys_close": 168,
    "bpf_timer_init": 169,
    "bpf_timer_set_callback": 170,
    "bpf_timer_start": 171,
    "bpf_timer_cancel": 172,
    "bpf_get_func_ip": 173,
    "bpf_get_attach_cookie": 174,
    "bpf_task_pt_regs": 175,
    "bpf_get_branch_snapshot": 176,
    "bpf_trace_vprintk": 177,
    "bpf_skc_to_unix_sock": 178,
    "bpf_kallsyms_lookup_name": 179,
    "bpf_find_vma": 180,
    "bpf_loop": 181,
    "bpf_strncmp": 182,
    "bpf_get_func_arg": 183,
    "bpf_get_func_ret": 184,
    "bpf_get_func_arg_cnt": 185,
    "bpf_get_retval": 186,
    "bpf_set_retval": 187,
    "bpf_xdp_get_buff_len": 188,
    "bpf_xdp_load_bytes": 189,
    "bpf_xdp_store_bytes": 190,
    "bpf_copy_from_user_task": 191,
    "bpf_skb_set_tstamp": 192,
    "bpf_ima_file_hash": 193,
    "bpf_kptr_xchg": 194,
    "bpf_map_lookup_percpu_elem": 195,
    "bpf_skc_to_mptcp_sock": 196,
    "bpf_dynptr_from_mem": 197,
    "bpf_ringbuf_reserve_dynptr": 198,
    "bpf_ringbuf_submit_dynptr": 199,
    "bpf_ringbuf_discard_dynptr": 200,
    "bpf_dynptr_read": 201,
    "bpf_dynptr_write": 202,
    "bpf_dynptr_data": 203,
    "bpf_tcp_raw_gen_syncookie_ipv4": 204,
    "bpf_tcp_raw_gen_syncookie_ipv6": 205,
    "bpf_tcp_raw_check_syncookie_ipv4": 206,
    "bpf_tcp_raw_check_syncookie_ipv6": 207,
    "bpf_ktime_get_tai_ns": 208,
    "bpf_user_ringbuf_drain": 209,
    "bpf_cgrp_storage_get": 210,
    "bpf_cgrp_storage_delete": 211,
}

HELPER_ARGS: dict[int, int] = {
    1: 2,  # bpf_map_lookup_elem
    2: 4,  # bpf_map_update_elem
    3: 2,  # bpf_map_delete_elem
    4: 3,  # bpf_probe_read
    5: 0,  # bpf_ktime_get_ns
    6: 3,  # bpf_trace_printk
    7: 0,  # bpf_get_prandom_u32
    8: 0,  # bpf_get_smp_processor_id
    9: 5,  # bpf_skb_store_bytes
    10: 5,  # bpf_l3_csum_replace
    11: 5,  # bpf_l4_csum_replace
    12: 3,  # bpf_tail_call
    13: 3,  # bpf_clone_redirect
    14: 0,  # bpf_get_current_pid_tgid
    15: 0,  # bpf_get_current_uid_gid
    16: 2,  # bpf_get_current_comm
    17: 1,  # bpf_get_cgroup_classid
    18: 3,  # bpf_skb_vlan_push
    19: 1,  # bpf_skb_vlan_pop
    20: 4,  # bpf_skb_get_tunnel_key
    21: 4,  # bpf_skb_set_tunnel_key
    22: 2,  # bpf_perf_event_read
    23: 2,  # bpf_redirect
    24: 1,  # bpf_get_route_realm
    25: 5,  # bpf_perf_event_output
    26: 4,  # bpf_skb_load_bytes
    27: 3,  # bpf_get_stackid
    28: 5,  # bpf_csum_diff
    29: 3,  # bpf_skb_get_tunnel_opt
    30: 3,  # bpf_skb_set_tunnel_opt
    31: 3,  # bpf_skb_change_proto
    32: 2,  # bpf_skb_change_type
    33: 3,  # bpf_skb_under_cgroup
    34: 1,  # bpf_get_hash_recalc
    35: 0,  # bpf_get_current_task
    36: 3,  # bpf_probe_write_user
    37: 2,  # bpf_current_task_under_cgroup
    38: 3,  # bpf_skb_change_tail
    39: 2,  # bpf_skb_pull_data
    40: 2,  # bpf_csum_update
    41: 1,  # bpf_set_hash_invalid
    42: 0,  # bpf_get_numa_node_id
    43: 3,  # bpf_skb_change_head
    44: 2,  # bpf_xdp_adjust_head
    45: 3,  # bpf_probe_read_str
    46: 1,  # bpf_get_socket_cookie
    47: 1,  # bpf_get_socket_uid
    48: 2,  # bpf_set_hash
    49: 5,  # bpf_setsockopt
    50: 4,  # bpf_skb_adjust_room
    51: 3,  # bpf_redirect_map
    52: 4,  # bpf_sk_redirect_map
    53: 4,  # bpf_sock_map_update
    54: 2,  # bpf_xdp_adjust_meta
    55: 4,  # bpf_perf_event_read_value
    56: 3,  # bpf_perf_prog_read_value
    57: 5,  # bpf_getsockopt
    58: 2,  # bpf_override_return
    59: 2,  # bpf_sock_ops_cb_flags_set
    60: 4,  # bpf_msg_redirect_map
    61: 2,  # bpf_msg_apply_bytes
    62: 2,  # bpf_msg_cork_bytes
    63: 4,  # bpf_msg_pull_data
    64: 3,  # bpf_bind
    65: 2,  # bpf_xdp_adjust_tail
    66: 5,  # bpf_skb_get_xfrm_state
    67: 4,  # bpf_get_stack
    68: 5,  # bpf_skb_load_bytes_relative
    69: 4,  # bpf_fib_lookup
    70: 4,  # bpf_sock_hash_update
    71: 4,  # bpf_msg_redirect_hash
    72: 4,  # bpf_sk_redirect_hash
    73: 4,  # bpf_lwt_push_encap
    74: 4,  # bpf_lwt_seg6_store_bytes
    75: 3,  # bpf_lwt_seg6_adjust_srh
    76: 4,  # bpf_lwt_seg6_action
    77: 1,  # bpf_rc_repeat
    78: 4,  # bpf_rc_keydown
    79: 1,  # bpf_skb_cgroup_id
    80: 0,  # bpf_get_current_cgroup_id
    81: 2,  # bpf_get_local_storage
    82: 4,  # bpf_sk_select_reuseport
    83: 2,  # bpf_skb_ancestor_cgroup_id
    84: 5,  # bpf_sk_lookup_tcp
    85: 5,  # bpf_sk_lookup_udp
    86: 1,  # bpf_sk_release
    87: 3,  # bpf_map_push_elem
    88: 2,  # bpf_map_pop_elem
    89: 2,  # bpf_map_peek_elem
    90: 4,  # bpf_msg_push_data
    91: 4,  # bpf_msg_pop_data
    92: 3,  # bpf_rc_pointer_rel
    93: 1,  # bpf_spin_lock
    94: 1,  # bpf_spin_unlock
    95: 1,  # bpf_sk_fullsock
    96: 1,  # bpf_tcp_sock
    97: 1,  # bpf_skb_ecn_set_ce
    98: 1,  # bpf_get_listener_sock
    99: 5,  # bpf_skc_lookup_tcp
    100: 5,  # bpf_tcp_check_syncookie
    101: 4,  # bpf_sysctl_get_name
    102: 3,  # bpf_sysctl_get_current_value
    103: 3,  # bpf_sysctl_get_new_value
    104: 3,  # bpf_sysctl_set_new_value
    105: 4,  # bpf_strtol
    106: 4,  # bpf_strtoul
    107: 4,  # bpf_sk_storage_get
    108: 2,  # bpf_sk_storage_delete
    109: 1,  # bpf_send_signal
    110: 5,  # bpf_tcp_gen_syncookie
    111: 5,  # bpf_skb_output
    112: 3,  # bpf_probe_read_user
    113: 3,  # bpf_probe_read_kernel
    114: 3,  # bpf_probe_read_user_str
    115: 3,  # bpf_probe_read_kernel_str
    116: 2,  # bpf_tcp_send_ack
    117: 1,  # bpf_send_signal_thread
    118: 0,  # bpf_jiffies64
    119: 4,  # bpf_read_branch_records
    120: 4,  # bpf_get_ns_current_pid_tgid
    121: 5,  # bpf_xdp_output
    122: 1,  # bpf_get_netns_cookie
    123: 1,  # bpf_get_current_ancestor_cgroup_id
    124: 3,  # bpf_sk_assign
    125: 0,  # bpf_ktime_get_boot_ns
    126: 5,  # bpf_seq_printf
    127: 3,  # bpf_seq_write
    128: 1,  # bpf_sk_cgroup_id
    129: 2,  # bpf_sk_ancestor_cgroup_id
    130: 4,  # bpf_ringbuf_output
    131: 3,  # bpf_ringbuf_reserve
    132: 2,  # bpf_ringbuf_submit
    133: 2,  # bpf_ringbuf_discard
    134: 2,  # bpf_ringbuf_query
    135: 2,  # bpf_csum_level
    136: 1,  # bpf_skc_to_tcp6_sock
    137: 1,  # bpf_skc_to_tcp_sock
    138: 1,  # bpf_skc_to_tcp_timewait_sock
    139: 1,  # bpf_skc_to_tcp_request_sock
    140: 1,  # bpf_skc_to_udp6_sock
    141: 4,  # bpf_get_task_stack
    142: 4,  # bpf_load_hdr_opt
    143: 4,  # bpf_store_hdr_opt
    144: 3,  # bpf_reserve_hdr_opt
    145: 4,  # bpf_inode_storage_get
    146: 2,  # bpf_inode_storage_delete
    147: 3,  # bpf_d_path
    148: 3,  # bpf_copy_from_user
    149: 5,  # bpf_snprintf_btf
    150: 4,  # bpf_seq_printf_btf
    151: 1,  # bpf_skb_cgroup_classid
    152: 4,  # bpf_redirect_neigh
    153: 2,  # bpf_per_cpu_ptr
    154: 1,  # bpf_this_cpu_ptr
    155: 2,  # bpf_redirect_peer
    156: 4,  # bpf_task_storage_get
    157: 2,  # bpf_task_storage_delete
    158: 0,  # bpf_get_current_task_btf
    159: 2,  # bpf_bprm_opts_set
    160: 0,  # bpf_ktime_get_coarse_ns
    161: 3,  # bpf_ima_inode_hash
    162: 1,  # bpf_sock_from_file
    163: 5,  # bpf_check_mtu
    164: 4,  # bpf_for_each_map_elem
    165: 5,  # bpf_snprintf
    166: 3,  # bpf_sys_bpf
    167: 4,  # bpf_btf_find_by_name_kind
    168: 1,  # bpf_sys_close
    169: 3,  # bpf_timer_init
    170: 2,  # bpf_timer_set_callback
    171: 3,  # bpf_timer_start
    172: 1,  # bpf_timer_cancel
    173: 1,  # bpf_get_func_ip
    174: 1,  # bpf_get_attach_cookie
    175: 1,  # bpf_task_pt_regs
    176: 3,  # bpf_get_branch_snapshot
    177: 4,  # bpf_trace_vprintk
    178: 1,  # bpf_skc_to_unix_sock
    179: 4,  # bpf_kallsyms_lookup_name
    180: 5,  # bpf_find_vma
    181: 4,  # bpf_loop
    182: 3,  # bpf_strncmp
    183: 3,  # bpf_get_func_arg
    184: 2,  # bpf_get_func_ret
    185: 1,  # bpf_get_func_arg_cnt
    186: 0,  # bpf_get_retval
    187: 1,  # bpf_set_retval
    188: 1,  # bpf_xdp_get_buff_len
    189: 4,  # bpf_xdp_load_bytes
    190: 4,  # bpf_xdp_store_bytes
    191: 5,  # bpf_copy_from_user_task
    192: 3,  # bpf_skb_set_tstamp
    193: 3,  # bpf_ima_file_hash
    194: 2,  # bpf_kptr_xchg
    195: 3,  # bpf_map_lookup_percpu_elem
    196: 1,  # bpf_skc_to_mptcp_sock
    197: 4,  # bpf_dynptr_from_mem
    198: 4,  # bpf_ringbuf_reserve_dynptr
    199: 2,  # bpf_ringbuf_submit_dynptr
    200: 2,  # bpf_ringbuf_discard_dynptr
    201: 5,  # bpf_dynptr_read
    202: 5,  # bpf_dynptr_write
    203: 3,  # bpf_dynptr_data
    204: 3,  # bpf_tcp_raw_gen_syncookie_ipv4
    205: 3,  # bpf_tcp_raw_gen_syncookie_ipv6
    206: 2,  # bpf_tcp_raw_check_syncookie_ipv4
    207: 2,  # bpf_tcp_raw_check_syncookie_ipv6
    208: 0,  # bpf_ktime_get_tai_ns
    209: 4,  # bpf_user_ringbuf_drain
    210: 4,  # bpf_cgrp_storage_get
    211: 2,  # bpf_cgrp_storage_delete
}
