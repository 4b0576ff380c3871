package dev.optsidecar.server.shm;

import com.sun.jna.LastErrorException;
import com.sun.jna.Memory;
import dev.optsidecar.client.UnixCalls;

import java.util.ArrayList;
import java.util.List;

/**
 * The server's side of passing a descriptor over a Unix socket, on {@link UnixCalls} (the C calls,
 * through JNA): receiving bytes with the descriptors that came with them, a receive timeout, and
 * sending a whole reply.
 */
final class Libc {
    private Libc() {}

    /** Sets a socket's receive timeout (0: none). */
    static void receiveTimeout(int fd, long millis) {
        Memory timeval = new Memory(16);
        timeval.setLong(0, millis / 1000);
        timeval.setLong(8, (millis % 1000) * 1000);
        UnixCalls.c().setsockopt(fd, UnixCalls.SOL_SOCKET, UnixCalls.SO_RCVTIMEO, timeval, 16);
    }

    /** What one recvmsg brought: bytes and the descriptors passed with them (each now ours to close). */
    record Received(byte[] bytes, List<Integer> descriptors, boolean truncated) {}

    /** Room for this many descriptors: more than one is refused, but each that came must be closed. */
    private static final int MAX_DESCRIPTORS = 8;

    /**
     * One recvmsg of up to {@code capacity} bytes with room for descriptors (received close-on-exec);
     * an empty array at the end of the stream. Retries when interrupted by a signal.
     */
    static Received receive(int fd, int capacity) {
        Memory data = new Memory(capacity);
        Memory iov = new Memory(16);
        iov.setPointer(0, data);
        iov.setLong(8, capacity);
        int controlLength = UnixCalls.CMSG_HEADER + MAX_DESCRIPTORS * Integer.BYTES;
        Memory control = new Memory(controlLength);
        control.clear();
        Memory message = new Memory(56); // struct msghdr on LP64
        message.clear();
        message.setPointer(16, iov);
        message.setLong(24, 1);
        message.setPointer(32, control);
        message.setLong(40, controlLength);
        long n;
        while (true) {
            try {
                n = UnixCalls.c().recvmsg(fd, message, UnixCalls.MSG_CMSG_CLOEXEC);
                break;
            } catch (LastErrorException e) {
                if (e.getErrorCode() != UnixCalls.EINTR) {
                    throw e;
                }
            }
        }
        List<Integer> descriptors = new ArrayList<>();
        long usedControl = message.getLong(40);
        for (long at = 0; at + UnixCalls.CMSG_HEADER <= usedControl; ) {
            long length = control.getLong(at);
            if (length < UnixCalls.CMSG_HEADER || at + length > usedControl) {
                break;
            }
            if (control.getInt(at + 8) == UnixCalls.SOL_SOCKET && control.getInt(at + 12) == UnixCalls.SCM_RIGHTS) {
                for (long d = at + UnixCalls.CMSG_HEADER; d + Integer.BYTES <= at + length; d += Integer.BYTES) {
                    descriptors.add(control.getInt(d));
                }
            }
            at += (length + 7) & ~7L;
        }
        boolean truncated = (message.getInt(48) & UnixCalls.MSG_CTRUNC) != 0;
        return new Received(data.getByteArray(0, (int) n), descriptors, truncated);
    }

    /** Sends all of {@code bytes} (no SIGPIPE if the peer is gone). */
    static void sendAll(int fd, byte[] bytes) {
        Memory buffer = new Memory(Math.max(1, bytes.length));
        buffer.write(0, bytes, 0, bytes.length);
        for (long at = 0; at < bytes.length; ) {
            try {
                at += UnixCalls.c().send(fd, buffer.share(at), bytes.length - at, UnixCalls.MSG_NOSIGNAL);
            } catch (LastErrorException e) {
                if (e.getErrorCode() != UnixCalls.EINTR) {
                    throw e;
                }
            }
        }
    }
}
