package dev.optsidecar.server.shm;

import dev.optsidecar.client.UnixCalls;
import dev.optsidecar.proto.v1.SegmentHandoffReply;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * What a client does to hand the server a sealed segment, for the tests, any part of it spoilable:
 * memfds with whatever seals, and a token sent with or without a descriptor.
 */
final class Memfds {
    private Memfds() {}

    /** A memfd of {@code bytes}, with {@code seals} added (0: none). */
    static int create(long bytes, int seals) {
        int fd = UnixCalls.c().memfd_create("optsidecar-segment", UnixCalls.MFD_CLOEXEC | UnixCalls.MFD_ALLOW_SEALING);
        UnixCalls.c().ftruncate(fd, bytes);
        if (seals != 0) {
            UnixCalls.c().fcntl(fd, UnixCalls.F_ADD_SEALS, seals);
        }
        return fd;
    }

    /** The connection a token went over (kept open) and the server's reply. */
    record Handed(int connection, SegmentHandoffReply reply) implements AutoCloseable {
        @Override
        public void close() {
            UnixCalls.closeQuietly(connection);
        }
    }

    /** Sends {@code token} with {@code fd} (none for -1) to the segment socket at {@code socketPath}. */
    static Handed handOver(String socketPath, int fd, byte[] token) {
        int s = UnixCalls.connect(socketPath);
        byte[] message = new byte[1 + token.length];
        message[0] = (byte) token.length;
        System.arraycopy(token, 0, message, 1, token.length);
        UnixCalls.sendWithDescriptor(s, message, fd);
        int length = ByteBuffer.wrap(UnixCalls.receiveExactly(s, 4)).order(ByteOrder.LITTLE_ENDIAN).getInt();
        try {
            return new Handed(s, SegmentHandoffReply.parseFrom(UnixCalls.receiveExactly(s, length)));
        } catch (com.google.protobuf.InvalidProtocolBufferException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Whether the server closed {@code connection} (a read returns the end of the stream). */
    static boolean closedByServer(int connection) {
        return UnixCalls.c().recv(connection, new com.sun.jna.Memory(1), 1, 0) == 0;
    }

    static void close(int fd) {
        UnixCalls.closeQuietly(fd);
    }
}
