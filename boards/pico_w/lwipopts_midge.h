// lwIP options of the midge Pico W firmware, included at the end of the
// board's mpconfigboard.h by tools/firmware (lwIP reads them through
// py/mpconfig.h before its own defaults; options MicroPython's
// lwipopts_common.h sets itself are not repeated: a redefinition fails the
// build). The stock firmware has lwIP's default of 5 TCP PCBs
// (boards/pico_w/board.json: tcp_sockets 5, max_clients 4); these allow 12,
// so max_clients can be raised to 10 in /midge.json's "config" as far as
// the heap allows. The listen backlog is the broker's own (listen_backlog).
#define MEMP_NUM_TCP_PCB            (12)
#define MEMP_NUM_TCP_PCB_LISTEN     (4)
