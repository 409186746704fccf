"""Data: the SoccerNet-v2 layout and labels, the demo tree, packed frames, the Baidu feature bank."""
