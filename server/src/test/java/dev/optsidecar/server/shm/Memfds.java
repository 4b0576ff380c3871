package dev.optsidecar.server.shm;

import com.sun.jna.LastErrorException;
import com.sun.jna.Library;
import com.sun.jna.Memory;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import dev.optsidecar.proto.v1.SegmentHandoffReply;

import java.nio.ByteOrder;

/**
 * What a client does to hand the server a sealed segment, from Java for the tests: memfds, their
 * seals, and sending one with a token over the segment socket (SCM_RIGHTS).
 */
final class Memfds {
    private Memfds() {}

    static final int MFD_CLOEXEC = 1;
    static final int MFD_ALLOW_SEALING = 2;
    static final int F_ADD_SEALS = 1024 + 9;
    static final int F_SEAL_SEAL = 1;
    static final int F_SEAL_SHRINK = 2;
    static final int F_SEAL_GROW = 4;

    interface C extends Library {
        C LIBRARY = Native.load("c", C.class);

        int memfd_create(String name, int flags) throws LastErrorException;

        int ftruncate(int fd, long length) throws LastErrorException;

        int fcntl(int fd, int command, Object... argument) throws LastErrorException;

        int socket(int domain, int type, int protocol) throws LastErrorException;

        int connect(int fd, Pointer address, int length) throws LastErrorException;

        long sendmsg(int fd, Pointer message, int flags) throws LastErrorException;

        long recv(int fd, Pointer buffer, long length, int flags) throws LastErrorException;

        int close(int fd) throws LastErrorException;
    }

    /** A memfd of {@code bytes}, with {@code seals} added (0: none). */
    static int create(long bytes, int seals) {
        int fd = C.LIBRARY.memfd_create("optsidecar-segment", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        C.LIBRARY.ftruncate(fd, bytes);
        if (seals != 0) {
            C.LIBRARY.fcntl(fd, F_ADD_SEALS, seals);
        }
        return fd;
    }

    /** A connection to {@code socketPath} on which {@code fd} (or none, for -1) went with {@code token}. */
    record Handed(int connection, SegmentHandoffReply reply) implements AutoCloseable {
        @Override
        public void close() {
            C.LIBRARY.close(connection);
        }
    }

    static Handed handOver(String socketPath, int fd, byte[] token) {
        int s = C.LIBRARY.socket(Libc.AF_UNIX, Libc.SOCK_STREAM, 0);
        C.LIBRARY.connect(s, Libc.unixAddress(socketPath), Libc.unixAddressLength(socketPath));
        Memory data = new Memory(1 + token.length);
        data.setByte(0, (byte) token.length);
        data.write(1, token, 0, token.length);
        Memory iov = new Memory(16);
        iov.setPointer(0, data);
        iov.setLong(8, 1 + token.length);
        Memory control = new Memory(24);
        control.clear();
        control.setLong(0, 16 + 4);
        control.setInt(8, Libc.SOL_SOCKET);
        control.setInt(12, Libc.SCM_RIGHTS);
        control.setInt(16, fd);
        Memory message = new Memory(56);
        message.clear();
        message.setPointer(16, iov);
        message.setLong(24, 1);
        if (fd >= 0) {
            message.setPointer(32, control);
            message.setLong(40, 24);
        }
        C.LIBRARY.sendmsg(s, message, 0);
        Memory header = new Memory(4);
        receiveExactly(s, header, 4);
        int length = header.getByteBuffer(0, 4).order(ByteOrder.LITTLE_ENDIAN).getInt();
        Memory body = new Memory(Math.max(1, length));
        receiveExactly(s, body, length);
        try {
            return new Handed(s, SegmentHandoffReply.parseFrom(body.getByteArray(0, length)));
        } catch (com.google.protobuf.InvalidProtocolBufferException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Whether the server closed {@code connection} (a read returns the end of the stream). */
    static boolean closedByServer(int connection) {
        return C.LIBRARY.recv(connection, new Memory(1), 1, 0) == 0;
    }

    private static void receiveExactly(int s, Memory into, int n) {
        for (int at = 0; at < n; ) {
            long got = C.LIBRARY.recv(s, into.share(at), n - at, 0);
            if (got <= 0) {
                throw new IllegalStateException("the segment socket closed after " + at + " of " + n + " bytes");
            }
            at += (int) got;
        }
    }

    static void close(int fd) {
        C.LIBRARY.close(fd);
    }
}
