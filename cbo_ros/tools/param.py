"""cbo_param: list, get, describe and set a running node's parameters (no ros2 CLI needed).

Talks to the standard parameter services every rclpy/rclcpp node offers
(``<node>/list_parameters``, ``get_parameters``, ``describe_parameters``, ``set_parameters``,
rcl_interfaces) with asynchronous calls and a timeout, like ``ros2 param``, which the pip ROS 2
does not have::

    cbo_param list /robot1/offload_planner_node
    cbo_param get /robot1/offload_planner_node deadline_ms
    cbo_param describe offload_planner_node jpeg_quality
    cbo_param set /robot1/offload_planner_node deadline_ms 250

A value is read as YAML (``250``, ``0.5``, ``true``, ``[224, 384]``, ``cbo``) and then given the
parameter's declared type where that is lossless (``250`` for a double is ``250.0``; anything for
a string parameter is the text as typed). Refusals come back with the node's own reason
(read-only, out of range, rejected by the node's validation); an unknown node or parameter is
named with what exists. Exit status: 0 done, 1 refused or failed, 2 bad usage.
"""

import argparse
import difflib
import os
import sys

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import (DescribeParameters, GetParameters, ListParameters,
                                SetParameters)

TYPE_NAMES = {
    ParameterType.PARAMETER_NOT_SET: 'not set',
    ParameterType.PARAMETER_BOOL: 'bool',
    ParameterType.PARAMETER_INTEGER: 'integer',
    ParameterType.PARAMETER_DOUBLE: 'double',
    ParameterType.PARAMETER_STRING: 'string',
    ParameterType.PARAMETER_BYTE_ARRAY: 'byte array',
    ParameterType.PARAMETER_BOOL_ARRAY: 'bool array',
    ParameterType.PARAMETER_INTEGER_ARRAY: 'integer array',
    ParameterType.PARAMETER_DOUBLE_ARRAY: 'double array',
    ParameterType.PARAMETER_STRING_ARRAY: 'string array',
}


class ParamError(RuntimeError):
    """A parameter operation that cannot be done (the message says why)."""


def node_name(text):
    """Return the fully qualified name of a node given as ``ns/name``, ``/ns/name`` or ``name``."""
    name = '/' + text.strip().strip('/')
    if name == '/':
        raise ParamError('empty node name')
    return name


def to_python(value: ParameterValue):
    """Return the Python value held by a ParameterValue (None when not set)."""
    from rclpy.parameter import parameter_value_to_python
    return parameter_value_to_python(value)


def parse_value(text, declared_type=None) -> ParameterValue:
    """Parse a command-line value as YAML and give it ``declared_type`` where lossless."""
    from rclpy.parameter import get_parameter_value
    if declared_type == ParameterType.PARAMETER_STRING:
        return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=text)
    value = get_parameter_value(text)
    if (declared_type == ParameterType.PARAMETER_DOUBLE
            and value.type == ParameterType.PARAMETER_INTEGER):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                              double_value=float(value.integer_value))
    if (declared_type == ParameterType.PARAMETER_DOUBLE_ARRAY
            and value.type == ParameterType.PARAMETER_INTEGER_ARRAY):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY,
                              double_array_value=[float(v) for v in value.integer_array_value])
    return value


class ParameterClient:
    """Asynchronous calls to the parameter services of one node, each bounded by a timeout."""

    def __init__(self, node, target, timeout_s=5.0):
        self.node = node
        self.target = node_name(target)
        self.timeout_s = float(timeout_s)
        self._clients = {}

    def _call(self, srv_type, service, request):
        import rclpy
        client = self._clients.get(service)
        if client is None:
            client = self._clients[service] = self.node.create_client(
                srv_type, f'{self.target}/{service}')
        if not client.wait_for_service(timeout_sec=self.timeout_s):
            raise ParamError(self.unknown_node_message())
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self.node, future, timeout_sec=self.timeout_s)
        if not future.done():
            client.remove_pending_request(future)
            raise ParamError(f'{self.target}/{service} did not answer within '
                             f'{self.timeout_s:g} s (node busy or gone?)')
        if future.exception() is not None:
            raise ParamError(f'{self.target}/{service} failed: {future.exception()}')
        return future.result()

    def unknown_node_message(self):
        """Explain that the target node does not answer, listing the nodes that are seen."""
        nodes = sorted(('/' + ns.strip('/') + '/' + name).replace('//', '/')
                       for name, ns in self.node.get_node_names_and_namespaces()
                       if name != self.node.get_name())
        domain = os.environ.get('ROS_DOMAIN_ID', '0')
        return (f'no node {self.target} answers on its parameter services within '
                f'{self.timeout_s:g} s (ROS_DOMAIN_ID={domain}); nodes seen: '
                f'{", ".join(nodes) or "none"}')

    def names(self):
        """Return the names of all the node's parameters, sorted."""
        response = self._call(ListParameters, 'list_parameters', ListParameters.Request())
        return sorted(response.result.names)

    def check_names(self, names):
        """Raise ParamError naming the parameters the node does not declare."""
        known = self.names()
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = (f'; did you mean {", ".join(close)}?' if close else
                        f'; its parameters: {", ".join(known)}')
                raise ParamError(f'node {self.target} has no parameter {name!r}{hint}')

    def get(self, names):
        """Return the ParameterValues of ``names`` (in order)."""
        response = self._call(GetParameters, 'get_parameters',
                              GetParameters.Request(names=list(names)))
        return list(response.values)

    def describe(self, names):
        """Return the ParameterDescriptors of ``names`` (in order)."""
        response = self._call(DescribeParameters, 'describe_parameters',
                              DescribeParameters.Request(names=list(names)))
        return list(response.descriptors)

    def set(self, name, text):
        """Set one parameter from its command-line text; return the value the node took.

        Raises ParamError with the node's reason when the node refuses.
        """
        self.check_names([name])
        descriptor = self.describe([name])[0]
        value = parse_value(text, descriptor.type)
        if (value.type != descriptor.type and not descriptor.dynamic_typing
                and descriptor.type != ParameterType.PARAMETER_NOT_SET):
            raise ParamError(f'{self.target} {name} is a {TYPE_NAMES[descriptor.type]} '
                             f'parameter; {text!r} reads as a {TYPE_NAMES[value.type]}')
        request = SetParameters.Request(parameters=[Parameter(name=name, value=value)])
        result = self._call(SetParameters, 'set_parameters', request).results[0]
        if not result.successful:
            raise ParamError(f'{self.target} refused {name} = {text}: '
                             f'{result.reason or "no reason given"}')
        return self.get([name])[0]


def format_range(descriptor):
    """Return a descriptor's range as text ('' when it has none)."""
    for ranges in (descriptor.integer_range, descriptor.floating_point_range):
        for r in ranges:
            step = f' step {r.step:g}' if r.step else ''
            return f'[{r.from_value:g}, {r.to_value:g}]{step}'
    return ''


def describe_lines(name, descriptor, value):
    """Return the lines ``describe`` prints for one parameter."""
    lines = [f'{name}:', f'  type: {TYPE_NAMES.get(descriptor.type, descriptor.type)}',
             f'  value: {to_python(value)!r}',
             f'  description: {descriptor.description or "-"}',
             f'  read-only: {"yes (set at start-up only)" if descriptor.read_only else "no"}']
    if format_range(descriptor):
        lines.append(f'  range: {format_range(descriptor)}')
    if descriptor.additional_constraints:
        lines.append(f'  constraints: {descriptor.additional_constraints}')
    return lines


def run(client, args):
    """Carry out one command; return the lines to print."""
    if args.command == 'list':
        names = client.names()
        if not names:
            return [f'{client.target} has no parameters']
        values = client.get(names)
        descriptors = client.describe(names)
        width = max(len(n) for n in names)
        return [f'{n:<{width}}  {to_python(v)!r}  ({TYPE_NAMES.get(d.type, d.type)}'
                f'{", read-only" if d.read_only else ", settable"})'
                for n, v, d in zip(names, values, descriptors)]
    client.check_names(args.names if args.command != 'set' else [args.name])
    if args.command == 'get':
        return [f'{n}: {to_python(v)!r}' for n, v in zip(args.names, client.get(args.names))]
    if args.command == 'describe':
        lines = []
        for n, d, v in zip(args.names, client.describe(args.names), client.get(args.names)):
            lines += describe_lines(n, d, v)
        return lines
    taken = client.set(args.name, args.value)
    return [f'{client.target}: {args.name} set to {to_python(taken)!r}']


def parse_args(argv):
    """Parse the cbo_param command line."""
    parser = argparse.ArgumentParser(prog='cbo_param', description=__doc__.splitlines()[0])
    parser.add_argument('--timeout', type=float, default=5.0,
                        help='seconds to wait for the node and for each answer (default 5)')
    commands = parser.add_subparsers(dest='command', required=True)
    listing = commands.add_parser('list', help="every parameter: value, type, settable or not")
    listing.add_argument('node', help='node name, e.g. /robot1/offload_planner_node')
    for name, text in (('get', 'the values of parameters'),
                       ('describe', 'description, type, range, read-only')):
        command = commands.add_parser(name, help=text)
        command.add_argument('node')
        command.add_argument('names', nargs='+', metavar='name')
    setting = commands.add_parser('set', help='set one parameter (the node may refuse)')
    setting.add_argument('node')
    setting.add_argument('name')
    setting.add_argument('value', help='YAML value: 250, 0.5, true, [224, 384], text')
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point of cbo_param; return the exit status."""
    import rclpy
    args = parse_args(sys.argv[1:] if argv is None else argv)
    code = 0
    with rclpy.init(args=['--ros-args', '--disable-rosout-logs']):
        node = rclpy.create_node(f'cbo_param_{os.getpid()}', start_parameter_services=False)
        try:
            client = ParameterClient(node, args.node, args.timeout)
            print('\n'.join(run(client, args)))
        except ParamError as error:
            print(f'cbo_param: {error}', file=sys.stderr)
            code = 1
        except ValueError as error:           # a value YAML cannot read
            print(f'cbo_param: bad value: {error}', file=sys.stderr)
            code = 2
        finally:
            node.destroy_node()
    return code


if __name__ == '__main__':
    sys.exit(main())
